CREATE TABLE summaries AS SELECT id, LLM('Summarize: {text}') AS summary FROM reviews
