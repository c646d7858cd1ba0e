SELECT d.id, d.label FROM (
  SELECT id, LLM_CLASSIFY('Tone of {text}', ['calm', 'angry']) AS label FROM reviews
) AS d WHERE d.label = 'angry'
