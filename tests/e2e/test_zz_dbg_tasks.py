from tests.e2e.conftest import *  # noqa
from tests.e2e.test_tasks_rest import WELD
import asyncio
async def test_dbg(server):
    arm_token = await server.token("arm-1")
    arm = await server.connect("arm-1", arm_token, capabilities=WELD)
    planner = await server.token("planner")
    status, submitted = await server.request("POST", "/v1/tasks", token=planner, json={"required": {"weld": 1.0}})
    for i in range(10):
        _, t = await server.request("GET", f"/v1/tasks/{submitted['id']}")
        print(t)
        await asyncio.sleep(0.2)
    print(await arm.deliveries(1))
