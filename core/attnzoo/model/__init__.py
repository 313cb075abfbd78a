"""The network: vit (the Vision Transformer, built from a kernel factory), flops (what a
step costs in FLOPs) and compile (torch.compile with its one eager fallback)."""
