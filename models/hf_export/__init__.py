"""A BERT whose layers may each have their own heads x d_k and feed-forward width, as Hugging Face classes.

These two files are copied into every exported model folder that plain ``BertForMaskedLM`` cannot load
(``trust_remote_code=True``); they import only torch and transformers, never sitra.
"""
