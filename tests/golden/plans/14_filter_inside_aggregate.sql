SELECT p.category, AVG(CASE WHEN LLM_FILTER('Late delivery? {r.text}') THEN 1 ELSE 0 END) AS late_share
FROM reviews r JOIN products p ON p.id = r.product_id GROUP BY p.category
