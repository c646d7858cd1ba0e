SELECT id, LLM('Summarize: {text}') AS s FROM reviews WHERE stars = 1
UNION ALL
SELECT id, LLM('Praise: {text}') AS s FROM reviews WHERE stars = 5
