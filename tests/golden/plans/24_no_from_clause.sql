SELECT LLM('Say hello') AS greeting
