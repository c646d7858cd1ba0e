-- LIMIT over groups cannot stop the per-row LLM work early.
SELECT LLM_CLASSIFY('Sentiment: {text}', ['positive', 'negative']) AS s, count(*) AS n
FROM reviews GROUP BY 1 LIMIT 1
