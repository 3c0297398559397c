"""World models: how a game responds, learnt from the agent's own episodes, and planning with it.

`transitions` turns stored episodes into (state, action, outcome) records, `model` is the world
model (a model of its own with its own adapter, trained by the SFT learner to write the game's next
message), and `planner` chooses each real action by imagining what candidate actions lead to.
"""
