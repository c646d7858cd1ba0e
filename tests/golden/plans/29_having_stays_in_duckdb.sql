SELECT product_id, count(*) AS n FROM reviews GROUP BY product_id
HAVING LLM_FILTER('Is product {product_id} popular?')
