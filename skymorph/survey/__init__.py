"""skymorph.survey"""
