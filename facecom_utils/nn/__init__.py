"""Networks: backbones by name (with honest weight loading), the task models, margin heads."""
