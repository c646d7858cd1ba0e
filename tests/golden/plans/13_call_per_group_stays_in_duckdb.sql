-- A call on group keys runs once per group, inside DuckDB.
SELECT category, LLM('Describe the {category} category') AS blurb, count(*) AS n
FROM products GROUP BY category ORDER BY category
