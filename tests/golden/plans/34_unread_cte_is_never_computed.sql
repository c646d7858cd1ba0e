-- A CTE with LLM calls that nothing reads is not part of the plan: it is never run or priced.
WITH unused AS (SELECT id, LLM('Summarize: {text}') AS s FROM reviews),
late AS (SELECT id FROM reviews WHERE LLM_FILTER('Late? {text}'))
SELECT id FROM late ORDER BY id
