-- A predicate DuckDB must finish (a subquery) keeps the LIMIT out of the LLM stage.
SELECT id FROM reviews
WHERE LLM_FILTER('Late? {text}') OR product_id IN (SELECT id FROM products WHERE category = 'home')
LIMIT 2
