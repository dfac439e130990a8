"""medvl3d.text"""
