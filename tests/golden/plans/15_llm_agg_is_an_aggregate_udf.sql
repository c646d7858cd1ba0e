SELECT product_id, LLM_AGG('Summarize these reviews', text) AS summary
FROM reviews GROUP BY product_id
