WITH late AS (SELECT id, text FROM reviews WHERE LLM_FILTER('Late delivery? {text}')),
summarized AS (SELECT id, LLM('Summarize: {text}') AS summary FROM late)
SELECT * FROM summarized ORDER BY id
