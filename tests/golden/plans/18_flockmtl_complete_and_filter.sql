SELECT id, llm_complete({'model_name': 'other'}, {'prompt': 'Summarize the review'}, {'review': text, 'stars': stars}) AS s
FROM reviews
WHERE llm_filter({'model_name': 'default'}, {'prompt': 'Is the review negative?'}, {'review': text})
