"""skymorph.catalog"""
