"""The product's shipped data: clusters, model recipes, the twin's hardware profiles and model cards, the
reference measurements, the nightly examples. Read through common.config.CONFIGS_DIR."""
