"""The R1 recipe's stages around the trainers: teacher traces, rejection sampling, distillation."""
