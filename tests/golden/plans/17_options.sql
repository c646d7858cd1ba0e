SELECT id, LLM('Summarize: {text}', model => 'other', max_tokens => 8, temperature => 0.5) AS s
FROM reviews
