SELECT id, LLM_EXTRACT('Facts in {text}', '{"late": "boolean", "days": "integer"}').days AS days
FROM reviews
