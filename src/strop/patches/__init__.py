"""Every change strop makes to another library's internals, in one folder.

- ``fused.lean_layers(model)``: LoRA linears, SwiGLU MLPs and RMSNorms keep fewer tensors for backward;
- ``varlen.per_example_attention(model)``: padding-free rows attend within their own example;
- ``lm_head.labelled_positions_only()``: TRL's LM head scores only labelled positions, in CPU-sized tiles;
- ``checkpoints.install(trainer)``: the Trainer's persistence methods write safetensors + JSON, never pickles;
- ``gguf_reader.one_parse_per_file()``: a GGUF load's config, model and tokenizer share one parse of the header;
- ``bnb_import.install()``: while bitsandbytes is imported, ``kernels.get_kernel`` refuses, so no strop
  process asks huggingface.co for code (run by ``import strop``); ``bnb_import.defer()``: the ``strop``
  command imports bitsandbytes only when 4-bit weights are wanted (``wanted()``);
- ``prompt_cache.install(model)``: a prompt or prefix tuning model generates with its cache under transformers'
  renamed cache argument (peft reads the old name, so it injected the soft prompt again at every token).

The first three and ``gguf_reader`` change a model, a module or a package attribute for the length of a
``with`` block and put back what they found. ``checkpoints.install`` replaces methods on one trainer
instance, for that trainer's life (its checkpoints are written and read inside ``train()`` and by the
final save). ``bnb_import`` adds a finder to ``sys.meta_path`` for the process's life; the finder changes
``kernels.get_kernel`` only while bitsandbytes' own modules run, and puts it back; ``wanted()`` clears the
cached availability answers of peft and transformers named in ``bnb_import._CACHED_ANSWERS``.
``prompt_cache.install`` replaces one model instance's ``prepare_inputs_for_generation``, for its life.
``inventory.INVENTORY`` lists each private name these patches and strop's other modules touch;
``tests/test_patches.py`` fails by name when an upgrade moves one.
"""
