"""skymorph.exporter"""
