-- Three chained CTEs with an LLM call each are one chain of operators: source -> LLMMap -> row-local
-- SELECT -> LLMMap -> row-local SELECT -> LLMMap -> output; every CTE's operators appear once.
WITH answered AS (SELECT id, text, LLM('Answer: {text}') AS answer FROM reviews),
critiqued AS (SELECT id, text, answer, LLM('Critique {answer} given {text}') AS critique FROM answered)
SELECT id, LLM('Revise {answer} after {critique}') AS revised FROM critiqued ORDER BY id
