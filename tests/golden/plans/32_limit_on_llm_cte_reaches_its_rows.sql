-- A consumer's LIMIT on a CTE of LLM answers reaches the CTE's rows: three summaries, three replies.
WITH s AS (SELECT id, product_id, LLM('Summarize: {text}') AS summary FROM reviews)
SELECT id, LLM('Reply to: {summary}') AS r FROM s LIMIT 3
