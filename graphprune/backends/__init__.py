"""Back-ends apply a PrunePlan to a model."""
