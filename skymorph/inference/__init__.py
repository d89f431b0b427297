"""skymorph.inference"""
