/** @type {import('next').NextConfig} */
const nextConfig = {
  // The addon is a native `.node` file: load it with Node's require at run time, never bundle it.
  serverExternalPackages: ['@avatar/node'],
};

export default nextConfig;
