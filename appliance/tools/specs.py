"""The tools the model was trained with: names, descriptions and schemas, verbatim.

These texts come from the reference agent's MCP servers (MiroMindAI/MiroThinker,
libs/miroflow-tools) as its MCP client lists them (FastMCP 2.10 for tool-python,
the MCP SDK's FastMCP 1.10 for the other two). They are part of the wire format:
the system prompt prints them, so they stay byte-for-byte as the model saw
them, even where they name services (Serper, E2B, Jina) the appliance replaces.
A golden test compares them with tests/golden/reference_tool_listing.json.
"""

from __future__ import annotations

from appliance.protocol.tooldefs import ToolSpec

PYTHON_TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "create_sandbox",
        "Create a linux sandbox.\n\nArgs:\n    timeout: Time in seconds before the sandbox is automatically shutdown. The default is 600 seconds.\n\nReturns:\n    The sandbox_id of the newly created sandbox. You should use this sandbox_id to run other tools in the sandbox.",
        {
            "properties": {"timeout": {"default": 600, "title": "Timeout", "type": "integer"}},
            "type": "object",
        },
    ),
    ToolSpec(
        "run_command",
        "Execute a lightweight shell command in the linux sandbox (no long-running, blocking, or resource-heavy processes).\n\nArgs:\n    command: The command to execute.\n    sandbox_id: The id of the sandbox to execute the command in. To create a new sandbox, use tool `create_sandbox`.\n\nReturns:\n    A CommandResult object containing the result of the command execution, format like CommandResult(stderr=..., stdout=..., exit_code=..., error=...)",
        {
            "properties": {
                "command": {"title": "Command", "type": "string"},
                "sandbox_id": {"title": "Sandbox Id", "type": "string"},
            },
            "required": ["command", "sandbox_id"],
            "type": "object",
        },
    ),
    ToolSpec(
        "run_python_code",
        "Run short, safe python code in a sandbox and return the execution result (avoid long loops or heavy tasks; must finish quickly).\n\nArgs:\n    code_block: The python code to run.\n    sandbox_id: The id of the sandbox to run the code in. Reuse existing sandboxes whenever possible. To create a new sandbox, use tool `create_sandbox`.\n\nReturns:\n    A CommandResult object containing the result of the command execution, format like CommandResult(stderr=..., stdout=..., exit_code=..., error=...)",
        {
            "properties": {
                "code_block": {"title": "Code Block", "type": "string"},
                "sandbox_id": {"title": "Sandbox Id", "type": "string"},
            },
            "required": ["code_block", "sandbox_id"],
            "type": "object",
        },
    ),
    ToolSpec(
        "upload_file_from_local_to_sandbox",
        "Upload a local file to the `/home/user` dir of the remote python interpreter.\n\nArgs:\n    sandbox_id: The id of the sandbox to run the code in. Reuse existing sandboxes whenever possible. To create a new sandbox, use tool `create_sandbox`.\n    local_file_path: The path of the file on local machine to upload.\n    sandbox_file_path: The path of directory to upload the file to in the sandbox. Default is `/home/user/`.\n\nReturns:\n    The path of the uploaded file in the remote python interpreter if the upload is successful.",
        {
            "properties": {
                "sandbox_id": {"title": "Sandbox Id", "type": "string"},
                "local_file_path": {"title": "Local File Path", "type": "string"},
                "sandbox_file_path": {
                    "default": "/home/user",
                    "title": "Sandbox File Path",
                    "type": "string",
                },
            },
            "required": ["sandbox_id", "local_file_path"],
            "type": "object",
        },
    ),
    ToolSpec(
        "download_file_from_internet_to_sandbox",
        "Download a file from the internet to the `/home/user` dir of the sandbox (avoid large or slow URLs).\n\nArgs:\n    sandbox_id: The id of the sandbox to run the code in. Reuse existing sandboxes whenever possible. To create a new sandbox, use tool `create_sandbox`.\n    url: The URL of the file to download.\n    sandbox_file_path: The path of directory to download the file to in the sandbox. Default is `/home/user/`.\n\nReturns:\n    The path of the downloaded file in the sandbox if the download is successful.",
        {
            "properties": {
                "sandbox_id": {"title": "Sandbox Id", "type": "string"},
                "url": {"title": "Url", "type": "string"},
                "sandbox_file_path": {
                    "default": "/home/user",
                    "title": "Sandbox File Path",
                    "type": "string",
                },
            },
            "required": ["sandbox_id", "url"],
            "type": "object",
        },
    ),
    ToolSpec(
        "download_file_from_sandbox_to_local",
        "Download a file from the sandbox to local system. Files in sandbox cannot be processed by tools from other servers - only local files and internet URLs can be processed by them.\n\nArgs:\n    sandbox_id: The id of the sandbox to download the file from. To have a sandbox, use tool `create_sandbox`.\n    sandbox_file_path: The path of the file to download on the sandbox.\n    local_filename: Optional filename to save as. If not provided, uses the original filename from sandbox_file_path.\n\nReturns:\n    The local path of the downloaded file if successful, otherwise error message.",
        {
            "properties": {
                "sandbox_id": {"title": "Sandbox Id", "type": "string"},
                "sandbox_file_path": {"title": "Sandbox File Path", "type": "string"},
                "local_filename": {"default": None, "title": "Local Filename", "type": "string"},
            },
            "required": ["sandbox_id", "sandbox_file_path"],
            "type": "object",
        },
    ),
)

SEARCH_TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "google_search",
        "\n    Tool to perform web searches via Serper API and retrieve rich results.\n\n    It is able to retrieve organic search results, people also ask,\n    related searches, and knowledge graph.\n\n    Args:\n        q: Search query string\n        gl: Optional region code for search results in ISO 3166-1 alpha-2 format (e.g., 'us')\n        hl: Optional language code for search results in ISO 639-1 format (e.g., 'en')\n        location: Optional location for search results (e.g., 'SoHo, New York, United States', 'California, United States')\n        num: Number of results to return (default: 10)\n        tbs: Time-based search filter ('qdr:h' for past hour, 'qdr:d' for past day, 'qdr:w' for past week, 'qdr:m' for past month, 'qdr:y' for past year)\n        page: Page number of results to return (default: 1)\n        autocorrect: Whether to autocorrect spelling in query\n\n    Returns:\n        Dictionary containing search results and metadata.\n    ",
        {
            "properties": {
                "q": {"title": "Q", "type": "string"},
                "gl": {"default": "us", "title": "Gl", "type": "string"},
                "hl": {"default": "en", "title": "Hl", "type": "string"},
                "location": {"default": None, "title": "Location", "type": "string"},
                "num": {"default": None, "title": "Num", "type": "integer"},
                "tbs": {"default": None, "title": "Tbs", "type": "string"},
                "page": {"default": None, "title": "Page", "type": "integer"},
                "autocorrect": {"default": None, "title": "Autocorrect", "type": "boolean"},
            },
            "required": ["q"],
            "title": "google_searchArguments",
            "type": "object",
        },
    ),
)

SCRAPE_TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "scrape_and_extract_info",
        "\n    Scrape content from a URL, including web pages, PDFs, code files, and other supported resources, and extract meaningful information using an LLM.\n    If you need to extract information from a PDF, please use this tool.\n\n    Args:\n        url (str): The URL to scrape content from. Supports various types of URLs such as web pages, PDFs, raw text/code files (e.g., GitHub, Gist), and similar sources.\n        info_to_extract (str): The specific types of information to extract (usually a question)\n        custom_headers (Dict[str, str]): Additional headers to include in the scraping request\n\n    Returns:\n        Dict[str, Any]: A dictionary containing:\n            - success (bool): Whether the operation was successful\n            - url (str): The original URL\n            - extracted_info (str): The extracted information\n            - error (str): Error message if the operation failed\n            - scrape_stats (Dict): Statistics about the scraped content\n            - model_used (str): The model used for summarization\n            - tokens_used (int): Number of tokens used (if available)\n    ",
        {
            "properties": {
                "url": {"title": "Url", "type": "string"},
                "info_to_extract": {"title": "Info To Extract", "type": "string"},
                "custom_headers": {
                    "additionalProperties": {"type": "string"},
                    "default": None,
                    "title": "Custom Headers",
                    "type": "object",
                },
            },
            "required": ["url", "info_to_extract"],
            "title": "scrape_and_extract_infoArguments",
            "type": "object",
        },
    ),
)

PYTHON_SERVER = "tool-python"
SEARCH_SERVER = "search_and_scrape_webpage"
SCRAPE_SERVER = "jina_scrape_llm_summary"
