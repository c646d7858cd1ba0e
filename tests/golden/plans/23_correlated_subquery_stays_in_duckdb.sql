SELECT p.name, (SELECT count(*) FROM reviews r
  WHERE r.product_id = p.id AND LLM_FILTER('Positive? {r.text}')) AS positives
FROM products p
