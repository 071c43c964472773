"""Update rules, one module per solver family, as plain functions of arrays."""
