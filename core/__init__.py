"""What all three packages (`pipeline`, `gan`, `analysis`) share: the error a user can fix, the
command-line rules, output folders, atomic files, devices, pixels, contact sheets, the
WebDataset naming rules and the faiss import. Nothing here knows about a stage, a GAN or an
analysis; every package may import it, and it imports none of them.
"""
