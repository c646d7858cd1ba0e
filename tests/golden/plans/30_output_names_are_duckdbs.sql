-- Qualification lowercases names and invents _col_N aliases; the result keeps DuckDB's names.
SELECT id AS "ID", stars + 1, upper(text), LLM('Summarize: {text}') FROM reviews ORDER BY 2
