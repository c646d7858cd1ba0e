-- A call in a window's PARTITION BY is a per-row value: lifted into a map, the window reads it.
SELECT id, row_number() OVER (PARTITION BY LLM_CLASSIFY('Topic of {text}', ['delivery', 'quality'])
ORDER BY id) AS rn FROM reviews
