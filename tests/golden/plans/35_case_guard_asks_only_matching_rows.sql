-- A call in a CASE branch is asked only for the rows that take the branch: its argument is NULL
-- elsewhere (no request), computed in the source by DuckDB.
SELECT id, CASE WHEN stars > 2 THEN LLM('Thank the customer for: {text}') END AS reply FROM reviews
