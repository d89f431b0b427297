"""skymorph.trainer"""
