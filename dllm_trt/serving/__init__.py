"""``dllm-trt serve``: an OpenAI-compatible server over the runtime's batching engine
(runtime/engine_loop.py), run by uvicorn or scaled out as Ray Serve replicas.

Importing this package imports nothing heavy; fastapi, uvicorn, openai, prometheus_client and ray (the
``serve`` extra) are imported by the modules that use them. The runtime never imports this package.
"""
