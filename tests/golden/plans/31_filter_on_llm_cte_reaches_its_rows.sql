-- A consumer's WHERE on a CTE of LLM answers reaches the CTE's rows: the summaries are asked only
-- for the reviews of product 1, and the CTE is read straight from its operators (no second copy).
WITH s AS (SELECT id, product_id, LLM('Summarize: {text}') AS summary FROM reviews)
SELECT id, LLM_CLASSIFY('Tone of: {summary}', ['calm', 'upset']) AS tone FROM s WHERE product_id = 1
