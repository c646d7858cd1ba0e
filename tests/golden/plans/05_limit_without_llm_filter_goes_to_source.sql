-- With no LLM predicate, LIMIT (and its ORDER BY) run in the source: maps see 3 rows only.
SELECT id, LLM('Summarize: {text}') AS summary FROM reviews ORDER BY stars DESC, id LIMIT 3
