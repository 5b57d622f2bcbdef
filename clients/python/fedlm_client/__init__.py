"""A PyTorch trainer for FedLM federations.

`fedlm_client.wire` speaks FedLM's wire protocol version 2 (Sources/FedLMProtocol/PROTOCOL.md),
`fedlm_client.shards` reads FedLM's token shards, and `fedlm_client.trainer` trains a
`transformers.GPT2LMHeadModel` on them and sends pseudo-gradients (Photon: start weights minus
the weights after H local AdamW steps) to the aggregator, beside FedLM's Swift trainers.
"""

__version__ = "0.2.0"
