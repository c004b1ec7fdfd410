"""The paper's experiments at CPU scale; each module is one command writing results/experiments/<name>/."""
