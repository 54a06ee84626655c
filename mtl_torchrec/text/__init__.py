"""Language-model text features: item texts encoded once into an on-disk vector store (and cache),
served to the model as a frozen embedding table.
"""
