"""Front-ends lower a framework graph into graphprune's IR."""
