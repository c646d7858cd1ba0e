SELECT id FROM reviews
WHERE LLM_FILTER('Late? {text}') AND LLM_FILTER('Angry? {text}') AND stars < 5 LIMIT 2
