"""The devices a model is made for (`devices.py`: one `Target` per device) and their compilers: Sony's
IMX500 converter and Arm's Vela for an Ethos-U."""
