"""The prompt enhancer: a vision-language model rewrites a short instruction ("white background, remove the shadow")
into the long, descriptive prompt ChronoEdit follows, looking at the image.

Torch-free: the interface and the project's system prompts (`prompts.py`), the remote backend (any OpenAI-compatible
chat-completions endpoint, `remote.py`), enhancements shared between identical requests (`shared.py`), the
`POST /v1/prompts/enhance` hand-over between the API and the enhancers (`requests.py`), the work on a job
(`service.py`) and the enhancer worker process (`worker.py`). The local backend holds a Qwen-VL model with torch and
transformers, so it lives with the other model-holding workers in `worker/enhancer.py`; the command line hands it in.
"""
