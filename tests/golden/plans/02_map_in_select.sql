-- A call in SELECT becomes an LLMMap over the rows of the FROM clause.
SELECT id, LLM('Summarize in one sentence: {text}') AS summary FROM reviews
