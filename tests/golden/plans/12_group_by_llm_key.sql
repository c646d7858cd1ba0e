-- GROUP BY 1 repeats the call; both copies are one LLM column.
SELECT LLM_CLASSIFY('Topic of {text}', ['delivery', 'quality', 'price']) AS topic, count(*) AS n
FROM reviews GROUP BY 1 ORDER BY 1
