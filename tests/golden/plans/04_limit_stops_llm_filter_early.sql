-- LIMIT sits above the LLM filter, which gets a limit hint so it works in small chunks.
SELECT id, LLM('Summarize: {text}') AS summary FROM reviews
WHERE stars <= 2 AND LLM_FILTER('Late delivery? {text}') LIMIT 2
