SELECT id, CASE WHEN LLM_FILTER('Happy? {text}') THEN 'happy' ELSE 'other' END AS mood
FROM reviews
